//! The route table: every (method, path) orchestratord serves, with the credential it takes and its
//! handler. The router, the `Allow` header of 405 answers and the auth layer's route classes all
//! come from [`ROUTES`]; a test checks that the OpenAPI document describes exactly these routes.

use axum::http::Method;
use axum::routing::{delete, get, post, MethodRouter};
use axum::Router;

use api::tenant::Role;

use super::{
    catalog, embeddings, events, messages, meta, nodes, openai, openapi, responses, tasks, App,
};

/// What a route asks of its caller (API.md §3.1 as amended by docs/auth.md). Every route names
/// one, so a route cannot be added without deciding who may call it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token, ever.
    Open,
    /// Any valid token: viewer, client or admin.
    Viewer,
    /// A client or admin token.
    Client,
    /// A client or admin token, and the task or session must be the caller's own (an admin's
    /// are all); another tenant's id answers 404.
    Own,
    /// An admin token.
    Admin,
    /// Node routes check their tokens in the handler (they depend on the node id and body).
    Node,
    /// `DELETE /v2/nodes/{id}`: that node's credential, or an admin token.
    NodeOrAdmin,
    /// `/metrics`: open unless `server.metrics_require_auth`, then any valid token.
    Metrics,
}

impl Access {
    /// The least role a caller token needs, for routes the auth layer checks.
    pub fn role(self) -> Option<Role> {
        match self {
            Access::Viewer | Access::Metrics => Some(Role::Viewer),
            Access::Client | Access::Own => Some(Role::Client),
            Access::Admin => Some(Role::Admin),
            Access::Open | Access::Node | Access::NodeOrAdmin => None,
        }
    }
}

pub struct Route {
    pub method: Method,
    /// An axum path; `{name}` matches one segment.
    pub path: &'static str,
    pub access: Access,
    handler: fn() -> MethodRouter<App>,
}

const fn route(
    method: Method,
    path: &'static str,
    access: Access,
    handler: fn() -> MethodRouter<App>,
) -> Route {
    Route {
        method,
        path,
        access,
        handler,
    }
}

use Access::{Admin, Client, Metrics, Node, NodeOrAdmin, Open, Own, Viewer};

/// Every route, grouped by path; within a path the order is the order of the `Allow` header.
pub static ROUTES: &[Route] = &[
    route(Method::POST, "/v2/tasks", Client, || post(tasks::submit)),
    route(Method::GET, "/v2/tasks", Client, || get(tasks::list)),
    route(Method::GET, "/v2/tasks/{id}", Own, || get(tasks::get_task)),
    route(Method::POST, "/v2/tasks/{id}/cancel", Own, || {
        post(tasks::cancel)
    }),
    route(Method::GET, "/v2/tasks/{id}/events", Own, || {
        get(tasks::events)
    }),
    route(Method::GET, "/v2/sessions/{id}", Own, || {
        get(tasks::get_session)
    }),
    route(Method::DELETE, "/v2/sessions/{id}", Own, || {
        delete(tasks::delete_session)
    }),
    route(Method::POST, "/v2/nodes/register", Node, || {
        post(nodes::register)
    }),
    route(Method::POST, "/v2/nodes/{id}/heartbeat", Node, || {
        post(nodes::heartbeat)
    }),
    route(Method::DELETE, "/v2/nodes/{id}", NodeOrAdmin, || {
        delete(nodes::deregister)
    }),
    route(Method::GET, "/v2/nodes", Viewer, || get(nodes::list)),
    route(Method::GET, "/v2/events", Viewer, || get(events::stream)),
    route(Method::GET, "/v2/pools", Viewer, || get(meta::pools)),
    route(Method::GET, "/v2/pools/{id}/health", Viewer, || {
        get(meta::pool_health)
    }),
    route(Method::POST, "/v2/pools/{id}/drain", Admin, || {
        post(meta::drain)
    }),
    route(Method::POST, "/v2/pools/{id}/reload", Admin, || {
        post(meta::reload)
    }),
    route(Method::POST, "/v2/catalog/models", Admin, || {
        post(catalog::register)
    }),
    route(Method::GET, "/v2/catalog/models", Viewer, || {
        get(catalog::list)
    }),
    route(Method::GET, "/v2/catalog/models/{id}", Viewer, || {
        get(catalog::get)
    }),
    route(Method::DELETE, "/v2/catalog/models/{id}", Admin, || {
        delete(catalog::delete)
    }),
    route(
        Method::POST,
        "/v2/catalog/models/{id}/verify",
        Admin,
        || post(catalog::verify),
    ),
    route(Method::POST, "/v2/catalog/models/{id}/state", Admin, || {
        post(catalog::set_state)
    }),
    route(Method::GET, "/v2/catalog/availability", Viewer, || {
        get(catalog::availability)
    }),
    route(Method::GET, "/v2/meta/version", Viewer, || {
        get(meta::version)
    }),
    route(Method::GET, "/v2/meta/capabilities", Viewer, || {
        get(meta::capabilities)
    }),
    route(Method::POST, "/v1/chat/completions", Client, || {
        post(openai::chat)
    }),
    route(Method::POST, "/v1/completions", Client, || {
        post(openai::completions)
    }),
    route(Method::GET, "/v1/models", Viewer, || get(openai::models)),
    route(Method::GET, "/v2/tenants", Admin, || get(meta::tenants)),
    route(Method::POST, "/v1/embeddings", Client, || {
        post(embeddings::embeddings)
    }),
    route(Method::POST, "/v1/responses", Client, || {
        post(responses::responses)
    }),
    route(Method::POST, "/v1/messages", Client, || {
        post(messages::messages)
    }),
    route(Method::GET, "/health", Open, || get(meta::health)),
    route(Method::GET, "/ready", Open, || get(meta::health)),
    route(Method::GET, "/metrics", Metrics, || get(meta::metrics)),
    route(Method::GET, "/v2/openapi.json", Viewer, || {
        get(openapi::document)
    }),
];

/// The router of [`ROUTES`] (one entry per path, its methods merged).
pub fn router() -> Router<App> {
    let mut router = Router::new();
    let mut seen: Vec<&str> = vec![];
    for r in ROUTES {
        if seen.contains(&r.path) {
            continue;
        }
        seen.push(r.path);
        let methods = ROUTES
            .iter()
            .filter(|x| x.path == r.path)
            .fold(MethodRouter::new(), |m, x| m.merge((x.handler)()));
        router = router.route(r.path, methods);
    }
    router
}

/// Each route's pattern split into segments, once: [`pattern_of`] runs on every request.
static SEGMENTS: std::sync::LazyLock<Vec<Vec<&'static str>>> =
    std::sync::LazyLock::new(|| ROUTES.iter().map(|r| r.path.split('/').collect()).collect());

/// The path pattern a concrete path is routed to, as axum picks it: among matching patterns, a
/// literal segment beats a `{param}` at the first position where they differ. Patterns have a
/// handful of segments, so a bit per segment (first segment highest) ranks them without
/// allocating.
fn pattern_of(path: &str) -> Option<&'static str> {
    let n = path.split('/').count();
    let mut best: Option<(u64, &'static str)> = None;
    for (r, pat) in ROUTES.iter().zip(SEGMENTS.iter()) {
        if pat.len() != n {
            continue;
        }
        let mut rank = 0u64;
        let matches = pat.iter().zip(path.split('/')).all(|(p, s)| {
            let param = p.starts_with('{') && p.ends_with('}');
            rank = rank << 1 | u64::from(param);
            if param {
                !s.is_empty()
            } else {
                *p == s
            }
        });
        if matches && best.is_none_or(|(b, _)| rank < b) {
            best = Some((rank, r.path));
        }
    }
    best.map(|(_, p)| p)
}

/// The `Allow` header for a path: the methods of the pattern it is routed to.
pub fn allowed_methods(path: &str) -> String {
    let Some(pattern) = pattern_of(path) else {
        return String::new();
    };
    ROUTES
        .iter()
        .filter(|r| r.path == pattern)
        .map(|r| r.method.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a request asks of its caller; unknown routes and methods need any valid token, so an
/// unknown path without a token is a 401 (API.md §3.1) and with one a 404 or 405.
pub fn access(method: &Method, path: &str) -> Access {
    pattern_of(path)
        .and_then(|p| ROUTES.iter().find(|r| r.path == p && r.method == method))
        .map_or(Viewer, |r| r.access)
}

/// Every route's method, path and access, for tests outside this crate (the role matrix).
pub fn rules() -> Vec<(Method, &'static str, Access)> {
    ROUTES
        .iter()
        .map(|r| (r.method.clone(), r.path, r.access))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn allow_headers_and_access() {
        let check = |path: &str, allow: &str| assert_eq!(allowed_methods(path), allow, "{path}");
        check("/v2/tasks", "POST, GET");
        check("/v2/tasks/abc", "GET");
        check("/v2/sessions/abc", "GET, DELETE");
        check("/v2/nodes/register", "POST");
        check("/v2/nodes/n1", "DELETE");
        check("/v2/catalog/models", "POST, GET");
        check("/v2/catalog/models/m", "GET, DELETE");
        check("/v2/nope", "");
        assert_eq!(access(&Method::POST, "/v2/nodes/n1/heartbeat"), Node);
        assert_eq!(access(&Method::DELETE, "/v2/nodes/n1"), NodeOrAdmin);
        assert_eq!(access(&Method::DELETE, "/v2/nodes/register"), Viewer);
        assert_eq!(access(&Method::POST, "/v2/pools/p/drain"), Admin);
        assert_eq!(access(&Method::GET, "/v2/tasks/abc"), Own);
        assert_eq!(access(&Method::GET, "/health"), Open);
        assert_eq!(access(&Method::GET, "/metrics"), Metrics);
        assert_eq!(access(&Method::GET, "/v2/unknown"), Viewer);
    }

    #[test]
    fn each_route_is_listed_once() {
        let mut seen = BTreeSet::new();
        for r in ROUTES {
            assert!(
                seen.insert((r.method.as_str(), r.path)),
                "{} {}",
                r.method,
                r.path
            );
        }
    }

    /// The OpenAPI document describes exactly the routes the router serves.
    #[test]
    fn openapi_paths_are_the_route_table() {
        let doc: serde_json::Value =
            serde_json::from_str(&openapi::document_json()).expect("the document is JSON");
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("path item").keys() {
                if [
                    "get", "post", "put", "delete", "patch", "head", "options", "trace",
                ]
                .contains(&method.as_str())
                {
                    documented.insert((method.to_ascii_uppercase(), path.clone()));
                }
            }
        }
        let served: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|r| (r.method.as_str().to_string(), r.path.to_string()))
            .collect();
        assert_eq!(documented, served, "OpenAPI paths vs the route table");
    }

    /// Each operation's documented security agrees with the credential the auth layer asks for.
    #[test]
    fn openapi_security_is_the_route_access() {
        let doc: serde_json::Value =
            serde_json::from_str(&openapi::document_json()).expect("the document is JSON");
        for r in ROUTES {
            let op = &doc["paths"][r.path][r.method.as_str().to_ascii_lowercase()];
            let schemes: BTreeSet<String> = op["security"]
                .as_array()
                .expect("every operation names its security")
                .iter()
                .map(|req| {
                    req.as_object()
                        .and_then(|o| {
                            o.iter().next().map(|(k, v)| {
                                let roles: Vec<&str> = v
                                    .as_array()
                                    .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
                                    .unwrap_or_default();
                                format!(
                                    "{k}{}",
                                    roles.iter().map(|r| format!(":{r}")).collect::<String>()
                                )
                            })
                        })
                        .unwrap_or_default()
                })
                .collect();
            let expected: &[&str] = match r.access {
                Open => &[""],
                Viewer => &["bearer:viewer"],
                Client | Own => &["bearer:client"],
                Admin => &["bearer:admin"],
                Metrics => &["", "bearer:viewer"],
                NodeOrAdmin => &["bearer:admin", "node_bearer"],
                Node => &["node_bearer"],
            };
            let expected: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
            assert_eq!(schemes, expected, "{} {}", r.method, r.path);
        }
    }
}
