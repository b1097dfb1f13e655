//! The floor of one relay hop, for `bench relay`'s one-stream figure (PERF.md: "report the
//! one-stream figure with its floor, measured with a minimal relay in the same run") and for
//! `bench overhead`'s CPU per request (`--floor`).
//!
//! `xtask relay-floor --upstream URL` is a separate process that does only what every hop of the
//! stack must do for a streamed token, with the same libraries the daemons use (tokio's default
//! multi-thread runtime, axum/hyper on the client side, reqwest on the upstream side, no Nagle
//! delay): it accepts a request, sends its body (with its content type and authorization)
//! upstream, and copies each response chunk through as it arrives. No parsing, no state, no
//! logging. Two of them chained in front of an engine (fake-engine, or bench overhead's twin
//! llama-server) stand for pool-managerd and orchestratord; their CPU per token, read from
//! `/proc/<pid>/stat` like the daemons', is what a token costs a hop that does nothing else.

use std::time::Duration;

use anyhow::Context;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header;
use axum::response::Response;
use futures::StreamExt;

#[derive(clap::Args)]
pub struct Args {
    /// Base URL the relay forwards every request to (path, body, content type and authorization
    /// kept).
    #[arg(long)]
    upstream: String,
}

#[derive(Clone)]
struct Upstream {
    base: String,
    client: reqwest::Client,
}

/// Serves until killed; prints `listening <port>` on stdout once bound.
pub fn run(a: Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("listening {}", listener.local_addr()?.port());
        let up = Upstream {
            base: a.upstream.trim_end_matches('/').to_string(),
            client: reqwest::Client::builder().tcp_nodelay(true).build()?,
        };
        let app = axum::Router::new().fallback(forward).with_state(up);
        use axum::serve::ListenerExt;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app)
            .await
            .context("relay-floor server")
    })
}

async fn forward(State(up): State<Upstream>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let mut post = up.client.post(format!("{}{path}", up.base));
    // The body's type, and the key a real llama-server is started with (bench overhead's twin):
    // the only headers every hop must pass on.
    for name in [header::CONTENT_TYPE, header::AUTHORIZATION] {
        if let Some(v) = req.headers().get(&name) {
            post = post.header(name, v.clone());
        }
    }
    let body = match axum::body::to_bytes(req.into_body(), 1 << 20).await {
        Ok(b) => b,
        Err(e) => return status(400, e.to_string()),
    };
    let sent = post.body(body).send().await;
    match sent {
        Ok(r) => {
            let code = r.status().as_u16();
            let chunks = r.bytes_stream().map(|c| c.map_err(std::io::Error::other));
            Response::builder()
                .status(code)
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(chunks))
                .unwrap_or_else(|e| status(500, e.to_string()))
        }
        Err(e) => status(502, e.to_string()),
    }
}

fn status(code: u16, msg: String) -> Response {
    let mut r = Response::new(Body::from(Bytes::from(msg)));
    *r.status_mut() = axum::http::StatusCode::from_u16(code)
        .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
    r
}

/// A running floor relay (killed on drop).
pub struct FloorRelay {
    pub child: std::process::Child,
    pub url: String,
}

impl FloorRelay {
    /// Starts `xtask relay-floor` (this same executable) in front of `upstream`.
    pub fn start(upstream: &str) -> anyhow::Result<Self> {
        use std::io::BufRead;
        let mut child = std::process::Command::new(std::env::current_exe()?)
            .args(["relay-floor", "--upstream", upstream])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("starting xtask relay-floor")?;
        let out = child.stdout.take().context("relay-floor stdout")?;
        let mut line = String::new();
        std::io::BufReader::new(out).read_line(&mut line)?;
        let port: u16 = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("relay-floor printed {line:?}"))?;
        Ok(Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for FloorRelay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A standalone fake-engine (one slot) emitting a token every `delay_ms`, each stamped with its
/// wall-clock time (killed on drop).
pub struct FakeEngine {
    pub child: std::process::Child,
    pub url: String,
}

impl FakeEngine {
    pub async fn start(
        bin: &std::path::Path,
        dir: &std::path::Path,
        delay_ms: u64,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let model = dir.join("floor-model.gguf");
        std::fs::write(&model, fake_engine::placeholder_gguf())?;
        let port = llorch::stack::free_port()?;
        let child = std::process::Command::new(bin.join("fake-engine"))
            .arg("-m")
            .arg(&model)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["-np", "1", "-c", "100000"])
            .env("FAKE_TOKENS", "1000000")
            .env("FAKE_TOKEN_DELAY_MS", delay_ms.to_string())
            .env("FAKE_TOKEN_STAMP", "1")
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting fake-engine")?;
        let url = format!("http://127.0.0.1:{port}");
        let probe = reqwest::Client::new();
        for _ in 0..100 {
            if probe
                .get(format!("{url}/health"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(Self { child, url });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("fake-engine did not become healthy at {url}")
    }
}

impl Drop for FakeEngine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
