//! The web dashboard (`/ui/`): hand-written HTML, CSS and JavaScript compiled into the binary, so
//! it works offline with no CDN and no build step. The page itself is open (it holds no data); it
//! reads everything from the API with the same client token as any client, which it asks for
//! unless the server is in open mode. Every answer carries a strict Content-Security-Policy: only
//! this origin's script, style and connections.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use super::App;

/// The assets, by file name under `/ui/`.
static ASSETS: &[(&str, &str, &str)] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../../ui/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../../ui/app.css"),
    ),
];

/// Only this origin's scripts, styles, images and connections; no inline script, no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; manifest-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `/` and `/ui` redirect to `/ui/`; `/ui/` is the page and `/ui/{file}` its assets;
/// `/ui/config.json` tells the page whether to ask for a token (`{"auth":"open"|"token"}`).
pub fn router(app: App) -> Router {
    Router::new()
        .route(
            "/ui/config.json",
            get(move || {
                let open = app.tokens().open();
                async move {
                    let body = if open { r#"{"auth":"open"}"# } else { r#"{"auth":"token"}"# };
                    with_headers(body.into_response(), "application/json")
                }
            }),
        )
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(|| async { asset("index.html") }))
        .route(
            "/ui/{file}",
            get(|axum::extract::Path(file): axum::extract::Path<String>| async move {
                asset(&file)
            }),
        )
}

fn asset(name: &str) -> Response {
    let Some((_, mime, body)) = ASSETS.iter().find(|(n, _, _)| *n == name) else {
        return with_headers(
            (StatusCode::NOT_FOUND, "no such file").into_response(),
            "text/plain; charset=utf-8",
        );
    };
    with_headers(body.into_response(), mime)
}

fn with_headers(mut resp: Response, mime: &'static str) -> Response {
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_are_small_and_reference_only_this_origin() {
        let total: usize = ASSETS.iter().map(|(_, _, b)| b.len()).sum();
        // Uncompressed, so the compressed page is well under the 250 KB budget.
        assert!(total < 250 * 1024, "{total} bytes");
        for (name, _, body) in ASSETS {
            let body = body.replace("http://www.w3.org/2000/svg", "");
            assert!(
                !body.contains("http://") && !body.contains("https://"),
                "{name} links elsewhere"
            );
        }
        let index = ASSETS[0].2;
        assert!(
            !index.contains("<script>") && !index.contains(" style="),
            "no inline script or style"
        );
    }

    #[tokio::test]
    async fn page_headers() {
        let r = asset("index.html");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-security-policy"], CSP);
        assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
        assert_eq!(asset("nope.js").status(), StatusCode::NOT_FOUND);
        assert_eq!(
            asset("app.js").headers()["content-type"],
            "text/javascript; charset=utf-8"
        );
    }
}
