//! A small HTTP(S) file server for tests (never a dependency of product crates).
//!
//! Files are registered by URL path ([`FileServer::serve`]) or as Hugging Face artifacts
//! ([`FileServer::serve_hf`], answering `/{org}/{repo}/resolve/{rev}/{path}` so the server can
//! stand in for `HF_ENDPOINT`). Responses support `HEAD`, `Range: bytes=N-` (206 with
//! `Content-Range`), `Content-Length` and an `ETag`. [`Options`] holds the knobs: a required bearer
//! token, an interrupted first transfer, corrupted bytes, failing first GETs and a CDN-style
//! redirect for Hugging Face routes. Per-path counters ([`FileServer::gets`],
//! [`FileServer::bytes_sent`]) let tests assert "exactly one download".
//!
//! Module map: `lib.rs` (the server handle and its registry), `handler` (one request: lookup,
//! auth, range, body stream with faults), `tls` (the self-signed certificate and the TLS listener).

mod handler;
mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::task::JoinHandle;

/// Server-wide knobs, set before start. Build with the chaining methods.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub(crate) token: Option<String>,
    pub(crate) interrupt_after: Option<u64>,
    pub(crate) corrupt: bool,
    pub(crate) fail_first: u32,
    pub(crate) hf_redirect: bool,
}

impl Options {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every registered path (not the redirect targets of [`Options::hf_redirect`]) needs
    /// `Authorization: Bearer <token>`; anything else gets 401.
    pub fn require_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The first GET of each file sends `bytes` body bytes (after its range start) and then drops
    /// the connection; later GETs are whole.
    pub fn interrupt_first_after(mut self, bytes: u64) -> Self {
        self.interrupt_after = Some(bytes);
        self
    }

    /// Serve every file with one byte flipped: the byte at offset `len / 2` is XORed with 0xFF.
    pub fn corrupt(mut self) -> Self {
        self.corrupt = true;
        self
    }

    /// The first `n` GETs of each file answer 503 (they do not count in [`FileServer::gets`]).
    pub fn fail_first_gets(mut self, n: u32) -> Self {
        self.fail_first = n;
        self
    }

    /// Hugging Face routes answer 302 to `/_cdn/{org}/{repo}/{rev}/{path}`, which serves the file
    /// without a token, as the Hub does with its CDN.
    pub fn hf_redirect(mut self) -> Self {
        self.hf_redirect = true;
        self
    }
}

/// One registered file with its counters.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) local: PathBuf,
    /// Set for Hugging Face routes: the redirect target when [`Options::hf_redirect`] is on.
    pub(crate) cdn_path: Option<String>,
    pub(crate) gets: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) interrupted: AtomicBool,
    pub(crate) failed: AtomicU32,
}

/// How a request path maps to an entry: directly, or as the CDN alias of a Hugging Face route.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    pub(crate) entry: Arc<Entry>,
    pub(crate) is_cdn: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub(crate) opts: Options,
    pub(crate) routes: RwLock<HashMap<String, Route>>,
}

/// A running server; dropping it stops it.
#[derive(Debug)]
pub struct FileServer {
    addr: SocketAddr,
    tls: bool,
    ca_pem: Option<Vec<u8>>,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl FileServer {
    /// Starts a plain HTTP server on `127.0.0.1:0`. Panics when it cannot bind (a test helper).
    pub async fn start(opts: Options) -> FileServer {
        let shared = Arc::new(Shared {
            opts,
            routes: RwLock::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fileserver: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("fileserver: local_addr");
        let app = handler::router(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FileServer {
            addr,
            tls: false,
            ca_pem: None,
            shared,
            task,
        }
    }

    /// Starts an HTTPS server on `127.0.0.1:0` with a self-signed certificate for `localhost` and
    /// `127.0.0.1`, generated now; trust [`FileServer::ca_pem`].
    pub async fn start_tls(opts: Options) -> FileServer {
        let shared = Arc::new(Shared {
            opts,
            routes: RwLock::default(),
        });
        let (acceptor, ca_pem) = tls::self_signed().expect("fileserver: self-signed certificate");
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fileserver: bind 127.0.0.1:0");
        let addr = tcp.local_addr().expect("fileserver: local_addr");
        let listener = tls::TlsListener::new(tcp, acceptor);
        let app = handler::router(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FileServer {
            addr,
            tls: true,
            ca_pem: Some(ca_pem),
            shared,
            task,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>` or `https://127.0.0.1:<port>`, without a trailing slash.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// `https://localhost:<port>` (the certificate names both `localhost` and `127.0.0.1`).
    pub fn localhost_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://localhost:{}", self.addr.port())
    }

    /// The PEM of the certificate to trust; `None` for a plain HTTP server.
    pub fn ca_pem(&self) -> Option<Vec<u8>> {
        self.ca_pem.clone()
    }

    /// Serves `local` at `url_path` (which starts with `/`). The file is opened per request, never
    /// copied; registering a path again replaces it and resets its counters.
    pub fn serve(&self, url_path: &str, local: impl Into<PathBuf>) {
        let path = normalize(url_path);
        let entry = new_entry(local.into(), None);
        self.routes().insert(
            path,
            Route {
                entry,
                is_cdn: false,
            },
        );
    }

    /// Serves `local` as the Hugging Face artifact `repo` (`org/name`) at `rev`, `path`:
    /// `GET /{org}/{name}/resolve/{rev}/{path}`. Returns that URL path (the counter key).
    pub fn serve_hf(&self, repo: &str, rev: &str, path: &str, local: impl Into<PathBuf>) -> String {
        let url_path = format!("/{repo}/resolve/{rev}/{path}");
        let cdn = format!("/_cdn/{repo}/{rev}/{path}");
        let entry = new_entry(local.into(), Some(cdn.clone()));
        let mut routes = self.routes();
        routes.insert(
            url_path.clone(),
            Route {
                entry: entry.clone(),
                is_cdn: false,
            },
        );
        routes.insert(
            cdn,
            Route {
                entry,
                is_cdn: true,
            },
        );
        url_path
    }

    /// GET requests answered with the file's bytes (200 or 206, interrupted ones included) for the
    /// file registered at `url_path`; 0 when none is registered there.
    pub fn gets(&self, url_path: &str) -> u64 {
        self.entry(url_path)
            .map_or(0, |e| e.gets.load(Ordering::SeqCst))
    }

    /// Body bytes handed to the connection for the file registered at `url_path`.
    pub fn bytes_sent(&self, url_path: &str) -> u64 {
        self.entry(url_path)
            .map_or(0, |e| e.bytes_sent.load(Ordering::SeqCst))
    }

    fn entry(&self, url_path: &str) -> Option<Arc<Entry>> {
        let routes = self.shared.routes.read().unwrap_or_else(|p| p.into_inner());
        routes.get(&normalize(url_path)).map(|r| r.entry.clone())
    }

    fn routes(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Route>> {
        self.shared
            .routes
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn normalize(url_path: &str) -> String {
    if url_path.starts_with('/') {
        url_path.to_string()
    } else {
        format!("/{url_path}")
    }
}

fn new_entry(local: PathBuf, cdn_path: Option<String>) -> Arc<Entry> {
    Arc::new(Entry {
        local,
        cdn_path,
        gets: AtomicU64::new(0),
        bytes_sent: AtomicU64::new(0),
        interrupted: AtomicBool::new(false),
        failed: AtomicU32::new(0),
    })
}
