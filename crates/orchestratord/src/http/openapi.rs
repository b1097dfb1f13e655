//! orchestratord's OpenAPI 3.1 document, generated from the `api` crate's wire types (which derive
//! `utoipa::ToSchema`) and served at `GET /v2/openapi.json`. The handlers live in the sibling
//! modules; the operations are described here on documentation-only stubs in [`doc`], so the
//! document never changes how a request is handled. `contracts/openapi/orchestratord.json` is the
//! committed copy: `cargo xtask openapi` rewrites it and the test below fails when it drifts.

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ObjectBuilder, Required, Type};
use utoipa::{Modify, OpenApi};

use super::routes::Access;

/// Where the committed document lives, relative to the workspace root.
pub const COMMITTED_PATH: &str = "contracts/openapi/orchestratord.json";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "llama-orch orchestratord",
        version = "2.0.0",
        description = "The control plane of llama-orch (API.md §§3–12): tasks and their SSE event streams, sessions, \
the node protocol, pools, the model catalog, meta, health, metrics and the OpenAI-compatible surface.\n\n\
Every error before a stream starts is an `ErrorEnvelope` whose `code` decides the HTTP status (API.md §3.3); \
`/v1` routes use OpenAI's error shape with the same status and headers. Every response carries `X-Correlation-Id`.\n\n\
Authentication (docs/auth.md): caller routes take a token (`bearer`) whose role (`admin` ⊇ `client` ⊇ `viewer`) \
is named in each operation's security requirement; a valid token of a lesser role gets 403 `FORBIDDEN`. Tasks and \
sessions are scoped to the token's tenant (another tenant's id answers 404); admins see all. Node routes take the \
registration, static or issued node credential (`node_bearer`). With no tokens configured (open mode, loopback \
only) no token is needed and every caller is the anonymous admin.",
        license(name = "Apache-2.0"),
    ),
    paths(
        doc::submit_task,
        doc::list_tasks,
        doc::get_task,
        doc::cancel_task,
        doc::task_events,
        doc::get_session,
        doc::delete_session,
        doc::register_node,
        doc::heartbeat,
        doc::deregister_node,
        doc::list_nodes,
        doc::list_tenants,
        doc::cluster_events,
        doc::list_pools,
        doc::pool_health,
        doc::drain_pool,
        doc::reload_pool,
        doc::register_model,
        doc::list_models,
        doc::get_model,
        doc::delete_model,
        doc::verify_model,
        doc::set_model_state,
        doc::model_availability,
        doc::meta_version,
        doc::meta_capabilities,
        doc::openapi_document,
        doc::health,
        doc::ready,
        doc::metrics,
        doc::chat_completions,
        doc::completions,
        doc::models,
        doc::responses,
        doc::messages,
        doc::embeddings,
    ),
    components(schemas(
        api::TaskId,
        api::SessionId,
        api::ids::CommandId,
        api::NodeId,
        api::PoolId,
        api::ModelId,
        api::ErrorEnvelope,
        api::ErrorCode,
        api::task::TaskRequest,
        api::task::AdmissionResponse,
        api::task::TaskRecord,
        api::events::Started,
        api::events::Token,
        api::tools::ToolCallDelta,
        api::tools::TokenLogprob,
        api::events::EmbeddingFrame,
        api::events::Metrics,
        api::events::End,
        api::events::PlacementInfo,
        api::events::StopReason,
        api::catalog::ModelRecord,
        api::catalog::ModelState,
        api::catalog::GgufInfo,
        api::catalog::RegisterModel,
        api::catalog::SetModelState,
        api::catalog::ModelsResponse,
        api::catalog::AvailabilityResponse,
        api::catalog::ModelAvailability,
        api::catalog::ServingPool,
        api::openai::ChatCompletionChunk,
        api::openai::TextCompletionChunk,
        api::TenantId,
        api::tenant::Role,
        api::tenant::TenantLimits,
        api::tenant::TenantUsage,
        api::tenant::TenantsResponse,
        doc::EventData,
        doc::SseEvent,
        api::cluster::ClusterEvent,
        api::cluster::QueueDepth,
        api::cluster::CommandUpdate,
        api::cluster::ResetReason,
        api::cluster::TasksResponse,
    )),
    security(("bearer" = [])),
    modifiers(&Extras),
    tags(
        (name = "tasks", description = "Submit, inspect, cancel and stream tasks (API.md §4, §5)"),
        (name = "sessions", description = "Session metadata (API.md §4.3)"),
        (name = "nodes", description = "Node protocol, pool-managerd → orchestratord (API.md §12)"),
        (name = "tenants", description = "Tenants: usage against limits (docs/auth.md)"),
        (name = "events", description = "The cluster change stream: nodes, pools, queues, tasks, catalog and commands as they change"),
        (name = "pools", description = "Pool views and control (API.md §10)"),
        (name = "catalog", description = "The model catalog: register, inspect, verify, retire and remove models; where they are cached and served (API.md §9)"),
        (name = "meta", description = "Version, capabilities, health, metrics and this document (API.md §10, §16)"),
        (name = "openai", description = "OpenAI-compatible surface (API.md §11)"),
        (name = "anthropic", description = "Anthropic Messages surface (API.md §11.5)"),
    ),
)]
struct ApiDoc;

/// Security schemes, and the optional correlation header on every operation (API.md §3.1, §3.2);
/// every response echoes it (said once, in the description).
struct Extras;

impl Modify for Extras {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A caller token: `[[auth.tokens]]` (named, with a role: admin, client or viewer) or `auth.client_tokens` (unnamed clients). The security requirement of each operation names the least role it needs."))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "node_bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A node credential: the registration token or the node's static token on register; the issued or static credential of that node id on heartbeat and deregister."))
                    .build(),
            ),
        );
        set_security(openapi);
        let string = || ObjectBuilder::new().schema_type(Type::String).build();
        // What the path macro cannot say: the drain body is optional, and `Last-Event-ID` is optional
        // but never null.
        if let Some(body) = openapi
            .paths
            .paths
            .get_mut("/v2/pools/{id}/drain")
            .and_then(|i| i.post.as_mut())
            .and_then(|op| op.request_body.as_mut())
        {
            body.required = Some(Required::False);
        }
        for path in ["/v2/tasks/{id}/events", "/v2/events"] {
            if let Some(params) = openapi
                .paths
                .paths
                .get_mut(path)
                .and_then(|i| i.get.as_mut())
                .and_then(|op| op.parameters.as_mut())
            {
                for p in params.iter_mut().filter(|p| p.name == "Last-Event-ID") {
                    p.schema = Some(<u64 as utoipa::PartialSchema>::schema());
                }
            }
        }
        for item in openapi.paths.paths.values_mut() {
            let ops = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.options,
                &mut item.head,
                &mut item.patch,
                &mut item.trace,
            ];
            for op in ops.into_iter().flatten() {
                op.parameters.get_or_insert_with(Vec::new).push(
                    ParameterBuilder::new()
                        .name("X-Correlation-Id")
                        .parameter_in(ParameterIn::Header)
                        .required(Required::False)
                        .description(Some("1–128 visible ASCII characters; every response carries it back, or a new UUIDv4 when absent or invalid."))
                        .schema(Some(string()))
                        .build(),
                );
            }
        }
    }
}

/// Each operation's security requirement, from the route table's [`Access`]: the role a `bearer`
/// token needs, the node credential, or none.
fn set_security(openapi: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::security::SecurityRequirement;
    let bearer =
        |role: api::tenant::Role| SecurityRequirement::new("bearer", [role.as_str().to_string()]);
    let node = || SecurityRequirement::new("node_bearer", Vec::<String>::new());
    for r in super::routes::ROUTES {
        let reqs = match (r.access, r.access.role()) {
            (Access::Open, _) => vec![SecurityRequirement::default()],
            (Access::Metrics, Some(role)) => vec![SecurityRequirement::default(), bearer(role)],
            (Access::Node, _) => vec![node()],
            (Access::NodeOrAdmin, _) => vec![node(), bearer(api::tenant::Role::Admin)],
            (_, Some(role)) => vec![bearer(role)],
            (_, None) => vec![SecurityRequirement::default()],
        };
        let Some(item) = openapi.paths.paths.get_mut(r.path) else {
            continue;
        };
        let op = match r.method.as_str() {
            "GET" => item.get.as_mut(),
            "POST" => item.post.as_mut(),
            "DELETE" => item.delete.as_mut(),
            "PUT" => item.put.as_mut(),
            "PATCH" => item.patch.as_mut(),
            _ => None,
        };
        if let Some(op) = op {
            op.security = Some(reqs);
        }
    }
}

/// The document as pretty JSON with a trailing newline: the exact content of [`COMMITTED_PATH`].
pub fn document_json() -> String {
    let mut s = ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes");
    s.push('\n');
    s
}

/// `GET /v2/openapi.json` (generated once per process).
pub async fn document() -> impl IntoResponse {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOC.get_or_init(document_json).as_str(),
    )
}

/// Documentation-only operation stubs (never called), and the schemas of SSE framing, which no
/// handler serializes as one type.
#[allow(dead_code)]
mod doc {
    use api::catalog::{
        AvailabilityResponse, ModelRecord, ModelsResponse, RegisterModel, SetModelState,
    };
    use api::events::{End, Metrics, Started, Token};
    use api::meta::{Health, MetaCapabilities, PoolHealth, SessionView, VersionInfo};
    use api::node::{
        DrainRequest, HeartbeatRequest, HeartbeatResponse, NodesResponse, PoolCommandAccepted,
        PoolsResponse, RegisterRequest, RegisterResponse, ReloadRequest,
    };
    use api::openai::{
        ChatCompletion, ChatCompletionRequest, CompletionRequest, ModelList, OpenAiError,
        TextCompletion,
    };
    use api::task::{AdmissionResponse, TaskRecord, TaskRequest};
    use api::tenant::TenantsResponse;
    use api::{ErrorEnvelope, ModelId, NodeId, PoolId, SessionId, TaskId};
    use serde::Serialize;
    use utoipa::ToSchema;

    // ---- schemas -------------------------------------------------------------------------------

    /// One server-sent event as a client parses it: `event:` names it, `id:` numbers it (task
    /// streams), and `data:` is one line of JSON (`EventData` for task streams, an OpenAI chunk or
    /// `[DONE]` for `/v1` streams).
    #[derive(Serialize, ToSchema)]
    pub struct SseEvent {
        pub event: Option<String>,
        pub id: Option<String>,
        pub data: String,
    }

    /// The `data` of one SSE frame; the frame's `event:` field names which: `started` → `Started`,
    /// `token` → `Token`, `tool_call` → `ToolCallDelta`, `embedding` → `EmbeddingFrame`,
    /// `metrics` → `Metrics`, `end` → `End`,
    /// `error` → `ErrorEnvelope`.
    #[derive(Serialize, ToSchema)]
    #[serde(untagged)]
    pub enum EventData {
        Started(Started),
        Token(Token),
        ToolCall(api::tools::ToolCallDelta),
        Embedding(api::events::EmbeddingFrame),
        Metrics(Metrics),
        End(End),
        Error(ErrorEnvelope),
    }

    /// The errors every token route may answer besides its own: a missing or wrong token, a
    /// role that does not allow the route, and an internal error.
    #[derive(utoipa::IntoResponses)]
    pub enum ClientErrors {
        /// `MISSING_TOKEN` or `BAD_TOKEN`.
        #[response(status = 401)]
        Unauthorized(ErrorEnvelope),
        /// `FORBIDDEN`: the token's role does not allow the route (docs/auth.md).
        #[response(status = 403)]
        Forbidden(ErrorEnvelope),
        /// `INTERNAL`.
        #[response(status = 500)]
        Internal(ErrorEnvelope),
    }

    // ---- tasks ---------------------------------------------------------------------------------

    /// Submit a task.
    ///
    /// Errors are checked in this order: 401; 400 `INVALID_PARAMS`; 409 `CONFLICT`; catalog (404/503
    /// `MODEL_NOT_AVAILABLE`, 409 `MODEL_DEPRECATED`, 400 `UNTRUSTED_ARTIFACT`); placement (400
    /// `INVALID_PARAMS`, 503 `POOL_UNREADY` / `NODE_UNAVAILABLE` / `MODEL_NOT_AVAILABLE`); queue policy
    /// (429); 400 `DEADLINE_UNMET`.
    #[utoipa::path(
        post,
        path = "/v2/tasks",
        tag = "tasks",
        request_body(content = TaskRequest, content_type = "application/json", description = "Parsed strictly: unknown fields are rejected with 400 `INVALID_PARAMS` and `field`."),
        responses(
            (status = 202, description = "Admitted; the body names the event stream.", body = AdmissionResponse,
                headers(("Location" = String, description = "`/v2/tasks/{task_id}`"))),
            (status = 400, description = "`INVALID_PARAMS` (with `field`), `DEADLINE_UNMET` or `UNTRUSTED_ARTIFACT`.", body = ErrorEnvelope),
            (status = 404, description = "`MODEL_NOT_AVAILABLE`: the model is unknown.", body = ErrorEnvelope),
            (status = 409, description = "`CONFLICT` (task id of an active task) or `MODEL_DEPRECATED`.", body = ErrorEnvelope),
            (status = 429, description = "`ADMISSION_REJECT` or `QUEUE_FULL_DROP_LRU`; `retriable`, `retry_after_ms` and `policy_label` are set.", body = ErrorEnvelope,
                headers(("Retry-After" = u64, description = "Seconds: max(1, ceil(retry_after_ms / 1000))"), ("X-Backoff-Ms" = u64, description = "= retry_after_ms"))),
            (status = 503, description = "`MODEL_NOT_AVAILABLE` (retriable), `POOL_UNREADY` or `NODE_UNAVAILABLE`.", body = ErrorEnvelope,
                headers(("Retry-After" = u64, description = "When retriable with a retry_after_ms"), ("X-Backoff-Ms" = u64, description = "= retry_after_ms"))),
            ClientErrors,
        ),
    )]
    fn submit_task() {}

    /// Retained tasks, newest first: queued, running and finished (until retention drops them).
    #[utoipa::path(
        get,
        path = "/v2/tasks",
        tag = "tasks",
        params(("limit" = Option<u32>, Query, description = "At most this many records, 1–5000 (default 500).")),
        responses(
            (status = 200, description = "Task records, newest first.", body = api::cluster::TasksResponse),
            (status = 400, description = "`INVALID_PARAMS`: bad `limit`.", body = ErrorEnvelope),
            ClientErrors,
        ),
    )]
    fn list_tasks() {}

    /// The task record.
    #[utoipa::path(
        get,
        path = "/v2/tasks/{id}",
        tag = "tasks",
        params(("id" = TaskId, Path, description = "Task id; a malformed id is 404.")),
        responses(
            (status = 200, description = "The task record; nullable fields are sent as null.", body = TaskRecord),
            (status = 404, description = "`NOT_FOUND`: unknown, malformed or past retention.", body = ErrorEnvelope),
            ClientErrors,
        ),
    )]
    fn get_task() {}

    /// Cancel a task.
    ///
    /// Idempotent and race-free: no `token` frame follows the cancel; a no-op once the task is terminal.
    #[utoipa::path(
        post,
        path = "/v2/tasks/{id}/cancel",
        tag = "tasks",
        params(("id" = TaskId, Path, description = "Task id; a malformed id is 404.")),
        responses(
            (status = 204, description = "Canceled (or already terminal)."),
            (status = 404, description = "`NOT_FOUND`: unknown, malformed or past retention.", body = ErrorEnvelope),
            ClientErrors,
        ),
    )]
    fn cancel_task() {}

    /// The task's event stream (Server-Sent Events).
    ///
    /// Each frame is `id: <n>\nevent: <name>\ndata: <one-line JSON>\n\n`, `id` counting from 0 per task.
    /// Events and their `data` (schema `EventData`): `started` (`Started`, once, when bound to a pool),
    /// `token` (`Token`, model text only), `tool_call` (`ToolCallDelta`, a piece of a tool call of a
    /// chat task with `tools`), `embedding` (`EmbeddingFrame`, one per input item of an embedding task),
    /// `metrics` (`Metrics`, an open object), then exactly one terminal frame:
    /// `end` (`End`) or `error` (`ErrorEnvelope`). Order: `started (token | tool_call | metrics)* terminal`, or a lone
    /// terminal frame for a task never bound to a pool; nothing follows the terminal frame. While no
    /// frame is due the server sends the comment `: keepalive`. The stream replays from the first frame
    /// (or after `Last-Event-ID`) and then follows live. Once the 200 is sent, failures travel as
    /// `error` frames.
    #[utoipa::path(
        get,
        path = "/v2/tasks/{id}/events",
        tag = "tasks",
        params(
            ("id" = TaskId, Path, description = "Task id; a malformed id is 404."),
            ("verbose" = Option<bool>, Query, description = "`true` adds `human`, `phase` and `prep` to `metrics` frames (default `false`)."),
            ("observe" = Option<bool>, Query, description = "`true`: watch without counting as a subscriber, so closing this stream never cancels the task (API.md §5.4's disconnect rule); default `false`."),
            ("Last-Event-ID" = Option<u64>, Header, description = "Resume: only frames with a greater id are sent."),
        ),
        responses(
            (status = 200, description = "The SSE stream; each frame's `data` is one of `EventData`, selected by `event:`.",
                content_type = "text/event-stream", body = SseEvent,
                headers(("Cache-Control" = String, description = "`no-cache`"), ("X-Accel-Buffering" = String, description = "`no`"))),
            (status = 400, description = "`INVALID_PARAMS`: bad `verbose` or `Last-Event-ID`.", body = ErrorEnvelope),
            (status = 404, description = "`NOT_FOUND`: unknown, malformed or past retention.", body = ErrorEnvelope),
            ClientErrors,
        ),
    )]
    fn task_events() {}

    // ---- sessions ------------------------------------------------------------------------------

    /// Session metadata.
    #[utoipa::path(
        get,
        path = "/v2/sessions/{id}",
        tag = "sessions",
        params(("id" = SessionId, Path, description = "Session id; a malformed id is 404.")),
        responses(
            (status = 200, description = "The session.", body = SessionView),
            (status = 404, description = "`NOT_FOUND`: unknown, malformed or expired.", body = ErrorEnvelope),
            ClientErrors,
        ),
    )]
    fn get_session() {}

    /// Delete a session and its affinity; running tasks are not affected.
    #[utoipa::path(
        delete,
        path = "/v2/sessions/{id}",
        tag = "sessions",
        params(("id" = SessionId, Path, description = "Session id.")),
        responses(
            (status = 204, description = "Deleted; also for unknown ids."),
            (status = 401, description = "`MISSING_TOKEN` or `BAD_TOKEN`.", body = ErrorEnvelope),
        ),
    )]
    fn delete_session() {}

    // ---- nodes ---------------------------------------------------------------------------------

    /// Register a node (idempotent for the same node and machine id).
    #[utoipa::path(
        post,
        path = "/v2/nodes/register",
        tag = "nodes",
        security(("node_bearer" = [])),
        request_body(content = RegisterRequest, content_type = "application/json", description = "Unknown fields are ignored."),
        responses(
            (status = 200, description = "Registered; the node is Online.", body = RegisterResponse),
            (status = 400, description = "`INVALID_PARAMS` (e.g. unsupported `protocol_version`).", body = ErrorEnvelope),
            (status = 409, description = "`CONFLICT`: the node id belongs to another Online machine, or a pool id to another node.", body = ErrorEnvelope),
            ClientErrors,
        ),
    )]
    fn register_node() {}

    /// Heartbeat: full pool and GPU status, command statuses; answers pending commands.
    #[utoipa::path(
        post,
        path = "/v2/nodes/{id}/heartbeat",
        tag = "nodes",
        security(("node_bearer" = [])),
        params(("id" = NodeId, Path, description = "Node id.")),
        request_body(content = HeartbeatRequest, content_type = "application/json", description = "Unknown fields are ignored."),
        responses(
            (status = 200, description = "Accepted (a stale `seq` is answered 200 with no commands).", body = HeartbeatResponse),
            (status = 400, description = "`INVALID_PARAMS`.", body = ErrorEnvelope),
            (status = 401, description = "`MISSING_TOKEN` or `BAD_TOKEN` (e.g. another node's credential): register again.", body = ErrorEnvelope),
            (status = 404, description = "`NOT_FOUND`: unknown node; register again.", body = ErrorEnvelope),
            (status = 500, description = "`INTERNAL`.", body = ErrorEnvelope),
        ),
    )]
    fn heartbeat() {}

    /// Deregister a node; its pools leave placement.
    #[utoipa::path(
        delete,
        path = "/v2/nodes/{id}",
        tag = "nodes",
        security(("node_bearer" = []), ("bearer" = [])),
        params(("id" = NodeId, Path, description = "Node id.")),
        responses(
            (status = 204, description = "Deregistered."),
            (status = 404, description = "`NOT_FOUND`: unknown node.", body = ErrorEnvelope),
            ClientErrors,
        ),
    )]
    fn deregister_node() {}

    /// Registered nodes.
    #[utoipa::path(
        get,
        path = "/v2/nodes",
        tag = "nodes",
        responses(
            (status = 200, description = "All nodes, Online and Offline.", body = NodesResponse),
            ClientErrors,
        ),
    )]
    fn list_nodes() {}

    // ---- tenants -------------------------------------------------------------------------------

    /// Every tenant's usage against its limits (admin).
    #[utoipa::path(
        get,
        path = "/v2/tenants",
        tag = "tenants",
        responses(
            (status = 200, description = "Tenants, their roles, weights, limits and usage.", body = TenantsResponse),
            ClientErrors,
        ),
    )]
    fn list_tenants() {}

    /// The cluster change stream (server-sent events).
    ///
    /// Each frame's `event:` is the `type` of its `data` (a `ClusterEvent`: `node`, `node_removed`,
    /// `pool`, `pool_removed`, `queue`, `task`, `catalog`, `catalog_removed`, `command`, `reset`) and
    /// its `id:` a number that only grows within one orchestratord run. Each event carries the whole
    /// current view of what changed; read the lists first, then apply events by replacing. A task's
    /// token count is published at most once a second. With `Last-Event-ID` the stream first replays
    /// the events after it (the server keeps the latest 1024); when some are gone it sends one
    /// `reset` (`gap`) instead: re-read the lists. A reader that falls 256 events behind gets a
    /// `reset` (`overflow`) without an `id` and the stream ends; reconnecting with `Last-Event-ID`
    /// resumes. `: keepalive` comments are sent when nothing happened for `streams.keepalive_ms`.
    #[utoipa::path(
        get,
        path = "/v2/events",
        tag = "events",
        params(
            ("Last-Event-ID" = Option<u64>, Header, description = "Resume: only events with a greater id are sent."),
        ),
        responses(
            (status = 200, description = "The SSE stream; each frame's `data` is one `ClusterEvent`.",
                content_type = "text/event-stream", body = SseEvent,
                headers(("Cache-Control" = String, description = "`no-cache`"), ("X-Accel-Buffering" = String, description = "`no`"))),
            (status = 400, description = "`INVALID_PARAMS`: `Last-Event-ID` is not a number.", body = ErrorEnvelope),
            ClientErrors,
        ),
    )]
    fn cluster_events() {}

    // ---- pools ---------------------------------------------------------------------------------

    /// Pools of all nodes.
    #[utoipa::path(
        get,
        path = "/v2/pools",
        tag = "pools",
        responses(
            (status = 200, description = "Pool views.", body = PoolsResponse),
            ClientErrors,
        ),
    )]
    fn list_pools() {}

    /// One pool's liveness and readiness.
    #[utoipa::path(
        get,
        path = "/v2/pools/{id}/health",
        tag = "pools",
        params(("id" = PoolId, Path, description = "Pool id.")),
        responses(
            (status = 200, description = "Pool health.", body = PoolHealth),
            (status = 404, description = "`NOT_FOUND`: unknown pool.", body = ErrorEnvelope),
            ClientErrors,
        ),
    )]
    fn pool_health() {}

    /// Drain a pool: it leaves placement at once; running tasks continue until done or the deadline.
    #[utoipa::path(
        post,
        path = "/v2/pools/{id}/drain",
        tag = "pools",
        params(("id" = PoolId, Path, description = "Pool id.")),
        request_body(content = DrainRequest, content_type = "application/json", description = "Optional; an empty body means `deadline_ms` 60000. Unknown fields are rejected."),
        responses(
            (status = 202, description = "The drain command (the running one when already draining).", body = PoolCommandAccepted),
            (status = 400, description = "`INVALID_PARAMS`.", body = ErrorEnvelope),
            (status = 404, description = "`NOT_FOUND`: unknown pool.", body = ErrorEnvelope),
            (status = 409, description = "`CONFLICT`: another drain, reload or load-model runs on the pool.", body = ErrorEnvelope),
            (status = 503, description = "`NODE_UNAVAILABLE`: the pool's node is Offline.", body = ErrorEnvelope),
            ClientErrors,
        ),
    )]
    fn drain_pool() {}

    /// Reload a pool with another model (side by side when VRAM allows).
    #[utoipa::path(
        post,
        path = "/v2/pools/{id}/reload",
        tag = "pools",
        params(("id" = PoolId, Path, description = "Pool id.")),
        request_body(content = ReloadRequest, content_type = "application/json", description = "`model_ref` is required. Unknown fields are rejected."),
        responses(
            (status = 202, description = "The reload command.", body = PoolCommandAccepted),
            (status = 400, description = "`INVALID_PARAMS` or `UNTRUSTED_ARTIFACT`.", body = ErrorEnvelope),
            (status = 404, description = "`NOT_FOUND` (unknown pool) or `MODEL_NOT_AVAILABLE`.", body = ErrorEnvelope),
            (status = 409, description = "`CONFLICT` or `MODEL_DEPRECATED`.", body = ErrorEnvelope),
            (status = 503, description = "`NODE_UNAVAILABLE` or `MODEL_NOT_AVAILABLE` (retriable).", body = ErrorEnvelope),
            ClientErrors,
        ),
    )]
    fn reload_pool() {}

    // ---- catalog -------------------------------------------------------------------------------

    /// Register a model by ref.
    ///
    /// Without `id`, the id is the ref's last path segment without `.gguf`, lowercased, other
    /// characters replaced by `-` (API.md §9.1). Registering only records the entry; a node fetches
    /// and hashes the file when a pool loads it (or at admission with on-demand provisioning).
    #[utoipa::path(
        post,
        path = "/v2/catalog/models",
        tag = "catalog",
        request_body(content = RegisterModel, content_type = "application/json", description = "Parsed strictly: unknown fields are rejected with 400 `INVALID_PARAMS` and `field`."),
        responses(
            (status = 200, description = "An identical entry (same id, ref and digest) already exists; nothing changed.", body = ModelRecord),
            (status = 201, description = "Created, `Active`.", body = ModelRecord),
            (status = 400, description = "`INVALID_PARAMS` (malformed ref, id or digest, with `field`) or `UNTRUSTED_ARTIFACT` (`http://`, or a scheme outside `catalog.allowed_schemes`).", body = ErrorEnvelope),
            (status = 409, description = "`CONFLICT`: the id is registered with another ref or digest.", body = ErrorEnvelope),
            ClientErrors,
        ),
    )]
    fn register_model() {}

    /// Every catalog entry.
    #[utoipa::path(
        get,
        path = "/v2/catalog/models",
        tag = "catalog",
        responses(
            (status = 200, description = "The catalog; nullable record fields are sent as null.", body = ModelsResponse),
            ClientErrors,
        ),
    )]
    fn list_models() {}

    /// One catalog entry, with its GGUF metadata once a verified copy has been read.
    #[utoipa::path(
        get,
        path = "/v2/catalog/models/{id}",
        tag = "catalog",
        params(("id" = ModelId, Path, description = "Catalog model id.")),
        responses(
            (status = 200, description = "The record.", body = ModelRecord),
            (status = 404, description = "`NOT_FOUND`: no such entry.", body = ErrorEnvelope),
            ClientErrors,
        ),
    )]
    fn get_model() {}

    /// Remove a catalog entry.
    ///
    /// The nodes in `locations` get `evict-model` and delete only files they placed under their
    /// models cache; a `file:` model is never deleted.
    #[utoipa::path(
        delete,
        path = "/v2/catalog/models/{id}",
        tag = "catalog",
        params(("id" = ModelId, Path, description = "Catalog model id.")),
        responses(
            (status = 204, description = "Removed."),
            (status = 404, description = "`NOT_FOUND`: no such entry.", body = ErrorEnvelope),
            (status = 409, description = "`CONFLICT`: a pool serves the model or is loading it.", body = ErrorEnvelope),
            ClientErrors,
        ),
    )]
    fn delete_model() {}

    /// Re-verify every copy.
    ///
    /// Each node in `locations` re-hashes its copy (`verify-model`); a copy that fails is removed,
    /// with its location. The answer is the record when the request was accepted.
    #[utoipa::path(
        post,
        path = "/v2/catalog/models/{id}/verify",
        tag = "catalog",
        params(("id" = ModelId, Path, description = "Catalog model id.")),
        responses(
            (status = 202, description = "Verification started on the nodes in `locations`.", body = ModelRecord),
            (status = 404, description = "`NOT_FOUND`: no such entry.", body = ErrorEnvelope),
            ClientErrors,
        ),
    )]
    fn verify_model() {}

    /// Retire or re-activate a model.
    ///
    /// A `Retired` model refuses new tasks with 409 `MODEL_DEPRECATED`; running tasks finish.
    #[utoipa::path(
        post,
        path = "/v2/catalog/models/{id}/state",
        tag = "catalog",
        params(("id" = ModelId, Path, description = "Catalog model id.")),
        request_body(content = SetModelState, content_type = "application/json", description = "`state` is `Active` or `Retired`. Unknown fields are rejected."),
        responses(
            (status = 200, description = "The record with its new state.", body = ModelRecord),
            (status = 400, description = "`INVALID_PARAMS`: any other state, or a malformed body.", body = ErrorEnvelope),
            (status = 404, description = "`NOT_FOUND`: no such entry.", body = ErrorEnvelope),
            ClientErrors,
        ),
    )]
    fn set_model_state() {}

    /// Where each model is cached and served.
    #[utoipa::path(
        get,
        path = "/v2/catalog/availability",
        tag = "catalog",
        responses(
            (status = 200, description = "Per model: the nodes holding a verified copy (`cached_on`) and the pools serving it, with their state and free slots.", body = AvailabilityResponse),
            ClientErrors,
        ),
    )]
    fn model_availability() {}

    // ---- meta ----------------------------------------------------------------------------------

    /// API, protocol and build versions.
    #[utoipa::path(
        get,
        path = "/v2/meta/version",
        tag = "meta",
        responses(
            (status = 200, description = "Versions.", body = VersionInfo),
            (status = 401, description = "`MISSING_TOKEN` or `BAD_TOKEN`.", body = ErrorEnvelope),
        ),
    )]
    fn meta_version() {}

    /// Capabilities computed from live Ready pools.
    #[utoipa::path(
        get,
        path = "/v2/meta/capabilities",
        tag = "meta",
        responses(
            (status = 200, description = "Capabilities; `engines` is empty when no pool is Ready.", body = MetaCapabilities),
            ClientErrors,
        ),
    )]
    fn meta_capabilities() {}

    /// This OpenAPI document.
    #[utoipa::path(
        get,
        path = "/v2/openapi.json",
        tag = "meta",
        responses(
            (status = 200, description = "The OpenAPI 3.1 document of orchestratord.", content_type = "application/json", body = Object),
            (status = 401, description = "`MISSING_TOKEN` or `BAD_TOKEN`.", body = ErrorEnvelope),
        ),
    )]
    fn openapi_document() {}

    /// Liveness only (no dependency checks); never needs a token.
    #[utoipa::path(
        get,
        path = "/health",
        tag = "meta",
        security(()),
        responses((status = 200, description = "Alive.", body = Health)),
    )]
    fn health() {}

    /// Readiness: 200 on the process that serves the API (the leader of an HA group, or the one
    /// orchestratord); an HA follower answers 503 `NOT_LEADER` naming the leader. Never needs a
    /// token.
    #[utoipa::path(
        get,
        path = "/ready",
        tag = "meta",
        security(()),
        responses(
            (status = 200, description = "Serving.", body = Health),
            (status = 503, description = "`NOT_LEADER`: an HA follower; `x-llorch-leader` names the leader.", body = ErrorEnvelope),
        ),
    )]
    fn ready() {}

    /// Prometheus metrics (API.md §16); a token is needed only with `server.metrics_require_auth`.
    #[utoipa::path(
        get,
        path = "/metrics",
        tag = "meta",
        security((), ("bearer" = [])),
        responses(
            (status = 200, description = "Prometheus text exposition.", content_type = "text/plain; version=0.0.4", body = String),
            (status = 401, description = "`MISSING_TOKEN` or `BAD_TOKEN` (only with `server.metrics_require_auth`).", body = ErrorEnvelope),
            (status = 500, description = "`INTERNAL`.", body = ErrorEnvelope),
        ),
    )]
    fn metrics() {}

    // ---- OpenAI --------------------------------------------------------------------------------

    /// OpenAI-compatible chat completion: a task with `messages`, priority `interactive`, no deadline.
    ///
    /// With `stream: true` the answer is `text/event-stream` of `data: <ChatCompletionChunk>` lines (the
    /// first with `delta.role = "assistant"`), a final chunk with `finish_reason`, a usage chunk when
    /// `stream_options.include_usage`, then `data: [DONE]`; a failure after the stream began sends one
    /// `data: {"error": {...}}` line and closes without `[DONE]`. A client disconnect cancels the task.
    #[utoipa::path(
        post,
        path = "/v1/chat/completions",
        tag = "openai",
        request_body(content = ChatCompletionRequest, content_type = "application/json"),
        responses(
            (status = 200, description = "The completion, or its chunk stream with `stream: true`.",
                content((ChatCompletion = "application/json"), (SseEvent = "text/event-stream")),
                headers(("X-Llorch-Task-Id" = String, description = "The task id."))),
            (status = 400, description = "`INVALID_PARAMS`.", body = OpenAiError),
            (status = 401, description = "`MISSING_TOKEN` or `BAD_TOKEN`.", body = OpenAiError),
            (status = 404, description = "`MODEL_NOT_AVAILABLE`: unknown model.", body = OpenAiError),
            (status = 409, description = "`MODEL_DEPRECATED`.", body = OpenAiError),
            (status = 429, description = "`ADMISSION_REJECT` or `QUEUE_FULL_DROP_LRU`.", body = OpenAiError,
                headers(("Retry-After" = u64, description = "Seconds"), ("X-Backoff-Ms" = u64, description = "Milliseconds"))),
            (status = 500, description = "`INTERNAL` or a failure of the task.", body = OpenAiError),
            (status = 503, description = "Nothing can serve the model now.", body = OpenAiError),
        ),
    )]
    fn chat_completions() {}

    /// OpenAI-compatible text completion: a task with `prompt`, priority `interactive`, no deadline.
    ///
    /// With `stream: true` the answer is `text/event-stream` of `data: <TextCompletionChunk>` lines, a final
    /// chunk with `finish_reason`, a usage chunk when `stream_options.include_usage`, then `data: [DONE]`.
    #[utoipa::path(
        post,
        path = "/v1/completions",
        tag = "openai",
        request_body(content = CompletionRequest, content_type = "application/json"),
        responses(
            (status = 200, description = "The completion, or its chunk stream with `stream: true`.",
                content((TextCompletion = "application/json"), (SseEvent = "text/event-stream")),
                headers(("X-Llorch-Task-Id" = String, description = "The task id."))),
            (status = 400, description = "`INVALID_PARAMS` (e.g. an array prompt).", body = OpenAiError),
            (status = 401, description = "`MISSING_TOKEN` or `BAD_TOKEN`.", body = OpenAiError),
            (status = 404, description = "`MODEL_NOT_AVAILABLE`: unknown model.", body = OpenAiError),
            (status = 409, description = "`MODEL_DEPRECATED`.", body = OpenAiError),
            (status = 429, description = "`ADMISSION_REJECT` or `QUEUE_FULL_DROP_LRU`.", body = OpenAiError,
                headers(("Retry-After" = u64, description = "Seconds"), ("X-Backoff-Ms" = u64, description = "Milliseconds"))),
            (status = 500, description = "`INTERNAL` or a failure of the task.", body = OpenAiError),
            (status = 503, description = "Nothing can serve the model now.", body = OpenAiError),
        ),
    )]
    fn completions() {}

    /// OpenAI Responses API: a chat task built from `instructions` and `input` (messages,
    /// `function_call` and `function_call_output` items), priority `interactive`. Stateless:
    /// `previous_response_id`, `conversation` and `background` are refused.
    ///
    /// With `stream: true` the answer is `text/event-stream` of `event: <type>` / `data: <JSON>` frames, each
    /// with `type` and `sequence_number`: `response.created`, `response.in_progress`, then per output item
    /// `response.output_item.added`, text (`response.content_part.added`, `response.output_text.delta`…,
    /// `response.output_text.done`, `response.content_part.done`) or a function call
    /// (`response.function_call_arguments.delta`…, `response.function_call_arguments.done`),
    /// `response.output_item.done`; finally `response.completed` (or `response.incomplete` at
    /// `max_output_tokens`) with the whole `ResponseObject`, or one `error` event. A client disconnect cancels the task.
    #[utoipa::path(
        post,
        path = "/v1/responses",
        tag = "openai",
        request_body(content = api::responses::ResponsesRequest, content_type = "application/json"),
        responses(
            (status = 200, description = "The response object, or its event stream with `stream: true`.",
                content((api::responses::ResponseObject = "application/json"), (SseEvent = "text/event-stream")),
                headers(("X-Llorch-Task-Id" = String, description = "The task id."))),
            (status = 400, description = "`INVALID_PARAMS`.", body = OpenAiError),
            (status = 401, description = "`MISSING_TOKEN` or `BAD_TOKEN`.", body = OpenAiError),
            (status = 404, description = "`MODEL_NOT_AVAILABLE`: unknown model.", body = OpenAiError),
            (status = 409, description = "`MODEL_DEPRECATED`.", body = OpenAiError),
            (status = 429, description = "`ADMISSION_REJECT` or `QUEUE_FULL_DROP_LRU`.", body = OpenAiError,
                headers(("Retry-After" = u64, description = "Seconds"), ("X-Backoff-Ms" = u64, description = "Milliseconds"))),
            (status = 500, description = "`INTERNAL` or a failure of the task.", body = OpenAiError),
            (status = 503, description = "Nothing can serve the model now.", body = OpenAiError),
        ),
    )]
    fn responses() {}

    /// Anthropic Messages API: a chat task built from `system` and `messages` (`tool_use` blocks are the
    /// assistant's tool calls, `tool_result` blocks tool messages), priority `interactive`. The client token
    /// may come as `x-api-key` as well as `Authorization: Bearer`.
    ///
    /// With `stream: true` the answer is `text/event-stream` of Anthropic's events: `message_start`, `ping`, per
    /// content block `content_block_start`, `content_block_delta` (`text_delta` or `input_json_delta`)…,
    /// `content_block_stop`, then `message_delta` (stop reason, usage) and `message_stop`; a failure sends one
    /// `error` event. A client disconnect cancels the task.
    #[utoipa::path(
        post,
        path = "/v1/messages",
        tag = "anthropic",
        request_body(content = api::anthropic::MessagesRequest, content_type = "application/json"),
        responses(
            (status = 200, description = "The message, or its event stream with `stream: true`.",
                content((api::anthropic::AnthropicResponse = "application/json"), (SseEvent = "text/event-stream")),
                headers(("X-Llorch-Task-Id" = String, description = "The task id."))),
            (status = 400, description = "`INVALID_PARAMS` (`invalid_request_error`).", body = api::anthropic::AnthropicError),
            (status = 401, description = "`MISSING_TOKEN` or `BAD_TOKEN`.", body = api::anthropic::AnthropicError),
            (status = 404, description = "`MODEL_NOT_AVAILABLE`: unknown model.", body = api::anthropic::AnthropicError),
            (status = 409, description = "`MODEL_DEPRECATED`.", body = api::anthropic::AnthropicError),
            (status = 429, description = "`ADMISSION_REJECT` or `QUEUE_FULL_DROP_LRU`.", body = api::anthropic::AnthropicError,
                headers(("Retry-After" = u64, description = "Seconds"), ("X-Backoff-Ms" = u64, description = "Milliseconds"))),
            (status = 500, description = "`INTERNAL` or a failure of the task.", body = api::anthropic::AnthropicError),
            (status = 503, description = "Nothing can serve the model now.", body = api::anthropic::AnthropicError),
        ),
    )]
    fn messages() {}

    /// OpenAI-compatible embeddings: an embedding task (`workload: "embedding"`), placed only on
    /// embedding pools (`[[pools]] embedding = true`); `input` is a string, strings, a token array
    /// or token arrays. 503 `MODEL_NOT_AVAILABLE` when no embedding pool serves the model.
    #[utoipa::path(
        post,
        path = "/v1/embeddings",
        tag = "openai",
        request_body(content = api::openai::EmbeddingsRequest, content_type = "application/json"),
        responses(
            (status = 200, description = "One vector per input item, in order.",
                body = api::openai::EmbeddingsResponse,
                headers(("X-Llorch-Task-Id" = String, description = "The task id."))),
            (status = 400, description = "`INVALID_PARAMS`.", body = OpenAiError),
            (status = 401, description = "`MISSING_TOKEN` or `BAD_TOKEN`.", body = OpenAiError),
            (status = 404, description = "`MODEL_NOT_AVAILABLE`: unknown model.", body = OpenAiError),
            (status = 409, description = "`MODEL_DEPRECATED`.", body = OpenAiError),
            (status = 429, description = "`ADMISSION_REJECT` or `QUEUE_FULL_DROP_LRU`.", body = OpenAiError,
                headers(("Retry-After" = u64, description = "Seconds"), ("X-Backoff-Ms" = u64, description = "Milliseconds"))),
            (status = 500, description = "`INTERNAL` or a failure of the task.", body = OpenAiError),
            (status = 503, description = "Nothing can serve the model now.", body = OpenAiError),
        ),
    )]
    fn embeddings() {}

    /// Models served by a Ready pool.
    #[utoipa::path(
        get,
        path = "/v1/models",
        tag = "openai",
        responses(
            (status = 200, description = "The model list.", body = ModelList),
            (status = 401, description = "`MISSING_TOKEN` or `BAD_TOKEN`.", body = OpenAiError),
            (status = 500, description = "`INTERNAL`.", body = OpenAiError),
        ),
    )]
    fn models() {}
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;

    fn doc() -> Value {
        serde_json::from_str(&document_json()).expect("the document is JSON")
    }

    fn properties(doc: &Value, schema: &str) -> BTreeSet<String> {
        doc["components"]["schemas"][schema]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("schema {schema} has properties"))
            .keys()
            .cloned()
            .collect()
    }

    fn keys(v: &Value) -> BTreeSet<String> {
        v.as_object().expect("an object").keys().cloned().collect()
    }

    /// The drift check: the committed document must be exactly what the code generates.
    #[test]
    fn committed_openapi_document_is_current() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../contracts/openapi/orchestratord.json"
        );
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        let generated = document_json();
        if committed != generated {
            let line = committed
                .lines()
                .zip(generated.lines())
                .position(|(a, b)| a != b)
                .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()));
            panic!(
                "{COMMITTED_PATH} is out of date with the wire types (first difference at line {}): run `cargo xtask openapi` to regenerate",
                line + 1
            );
        }
    }

    #[test]
    fn document_has_the_routes_and_schemas() {
        let d = doc();
        assert_eq!(d["info"]["version"], "2.0.0");
        assert_eq!(d["info"]["title"], "llama-orch orchestratord");
        for p in [
            "/v2/tasks",
            "/v2/tasks/{id}/events",
            "/v1/chat/completions",
            "/health",
            "/v2/openapi.json",
        ] {
            assert!(d["paths"].get(p).is_some(), "path {p}");
        }
        for s in [
            "ErrorEnvelope",
            "ErrorCode",
            "TaskRequest",
            "AdmissionResponse",
            "TaskRecord",
            "Started",
            "Token",
            "Metrics",
            "End",
            "PoolView",
            "RegisterRequest",
        ] {
            assert!(d["components"]["schemas"].get(s).is_some(), "schema {s}");
        }
        assert_eq!(
            d["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        assert_eq!(
            d["paths"]["/v2/tasks"]["post"]["responses"]["202"]["content"]["application/json"]
                ["schema"]["$ref"],
            "#/components/schemas/AdmissionResponse"
        );
        assert_eq!(
            d["paths"]["/v2/tasks/{id}/cancel"]["post"]["responses"]["204"]["content"],
            Value::Null
        );
        for code in ["400", "401", "404", "409", "429", "503"] {
            assert_eq!(
                d["paths"]["/v2/tasks"]["post"]["responses"][code]["content"]["application/json"]
                    ["schema"]["$ref"],
                "#/components/schemas/ErrorEnvelope",
                "{code}"
            );
        }
        assert!(
            d["paths"]["/v2/tasks/{id}/events"]["get"]["responses"]["200"]["content"]
                .get("text/event-stream")
                .is_some()
        );
    }

    #[test]
    fn catalog_routes_are_documented() {
        let d = doc();
        let p = &d["paths"];
        let record = "#/components/schemas/ModelRecord";
        let ok = |path: &str, method: &str, status: &str| {
            p[path][method]["responses"][status]["content"]["application/json"]["schema"]["$ref"]
                .clone()
        };
        assert_eq!(ok("/v2/catalog/models", "post", "201"), record);
        assert_eq!(ok("/v2/catalog/models", "post", "200"), record);
        assert_eq!(
            ok("/v2/catalog/models", "get", "200"),
            "#/components/schemas/ModelsResponse"
        );
        assert_eq!(ok("/v2/catalog/models/{id}", "get", "200"), record);
        assert_eq!(ok("/v2/catalog/models/{id}/verify", "post", "202"), record);
        assert_eq!(ok("/v2/catalog/models/{id}/state", "post", "200"), record);
        assert_eq!(
            ok("/v2/catalog/availability", "get", "200"),
            "#/components/schemas/AvailabilityResponse"
        );
        assert!(p["/v2/catalog/models/{id}"]["delete"]["responses"]["204"].is_object());
        assert_eq!(
            ok("/v2/catalog/models/{id}", "delete", "409"),
            "#/components/schemas/ErrorEnvelope"
        );
        assert_eq!(p["/v2/catalog/models"]["post"]["tags"][0], "catalog");
        let s = &d["components"]["schemas"];
        assert_eq!(s["RegisterModel"]["additionalProperties"], false);
        assert!(properties(&d, "RegisterModel").contains("ref"));
        assert!(properties(&d, "ModelRecord").contains("metadata"));
        for name in [
            "ModelState",
            "GgufInfo",
            "SetModelState",
            "ModelAvailability",
            "ServingPool",
        ] {
            assert!(s.get(name).is_some(), "schema {name}");
        }
    }

    #[tokio::test]
    async fn served_as_json() {
        let resp = document().await.into_response();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .expect("body");
        assert_eq!(body, document_json().as_bytes());
    }

    /// serde attributes are reflected: rename_all, skip_serializing_if, deny_unknown_fields, rename.
    #[test]
    fn serde_attributes_are_reflected() {
        let d = doc();
        let s = &d["components"]["schemas"];
        assert!(s["ErrorCode"]["enum"]
            .as_array()
            .expect("enum")
            .contains(&Value::from("QUEUE_FULL_DROP_LRU")));
        assert!(s["StopReason"]["enum"]
            .as_array()
            .expect("enum")
            .contains(&Value::from("stop_word")));
        let required: BTreeSet<String> = s["ErrorEnvelope"]["required"]
            .as_array()
            .expect("required")
            .iter()
            .map(|v| v.as_str().unwrap_or_default().to_string())
            .collect();
        assert_eq!(
            required,
            ["code", "message", "retriable"].map(String::from).into()
        );
        assert_eq!(s["TaskRequest"]["additionalProperties"], false);
        assert!(properties(&d, "LoadedModel").contains("ref"));
        assert!(
            s["TaskRecord"]["required"]
                .as_array()
                .expect("required")
                .contains(&Value::from("stop_reason")),
            "always-sent nullable fields are required"
        );
    }

    /// Every body a handler sends is a typed `api` struct, so the document describes exactly what
    /// is serialized: the meta, pool health, session and OpenAI schemas are all present, with the
    /// fields their types send.
    #[tokio::test]
    async fn bodies_of_every_route_are_typed_schemas() {
        let d = doc();
        let s = &d["components"]["schemas"];
        for name in [
            "Health",
            "VersionInfo",
            "MetaCapabilities",
            "PoolHealth",
            "SessionView",
            "ChatCompletionRequest",
            "CompletionRequest",
            "ChatCompletion",
            "TextCompletion",
            "ChatCompletionChunk",
            "TextCompletionChunk",
            "ModelList",
            "OpenAiError",
        ] {
            assert!(s.get(name).is_some(), "schema {name}");
        }
        let health = serde_json::to_value(api::meta::Health {
            status: "ok".into(),
            version: "v".into(),
            role: Some("leader".into()),
            epoch: Some(1),
            leader: Some("http://l".into()),
        })
        .expect("json");
        assert_eq!(properties(&d, "Health"), keys(&health));
        let version = serde_json::to_value(super::super::meta::version().await.0).expect("json");
        assert_eq!(properties(&d, "VersionInfo"), keys(&version));
        assert!(properties(&d, "ChatCompletionChunk").contains("usage"));
        let required: BTreeSet<String> = s["ChatChunkChoice"]["required"]
            .as_array()
            .expect("required")
            .iter()
            .map(|v| v.as_str().unwrap_or_default().to_string())
            .collect();
        assert!(
            required.contains("finish_reason"),
            "finish_reason is always sent, null until the end"
        );
        let chat = &d["paths"]["/v1/chat/completions"]["post"];
        assert_eq!(
            chat["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ChatCompletionRequest"
        );
        assert_eq!(
            chat["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ChatCompletion"
        );
        assert_eq!(
            d["paths"]["/v1/models"]["get"]["responses"]["200"]["content"]["application/json"]
                ["schema"]["$ref"],
            "#/components/schemas/ModelList"
        );
    }
}
