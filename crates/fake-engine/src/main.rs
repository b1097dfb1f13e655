//! Test-only: `fake-engine`, a stand-in for llama.cpp's `llama-server` (build b11434 dialect) that
//! pool-managerd can launch exactly like the real engine, for fault injection and load tests
//! (many slots, slow tokens, crashes, concurrency counting). It never pretends to be a model: its
//! tokens are visibly synthetic (`"tok0 "`, `"tok1 "`, …). Never used by product code.
//!
//! Command line (llama-server's flags; unknown ones are skipped with their value): `-m PATH`,
//! `-a ALIAS`, `-c N` (total context), `--parallel N` / `-np N` (slots), `--metrics`,
//! `--api-key KEY`, `--api-key-file PATH`, `--host H`, `--port P` (0 = OS picks),
//! `--n-gpu-layers N`, `--no-webui`, `-t N`, `--version`.
//!
//! Environment knobs, read once at startup (plus `FAKE_STATS_FILE`: a path rewritten with the
//! `/fake/stats` JSON whenever the concurrency high-water mark rises):
//! - `FAKE_LOAD_MS` (0): every endpoint answers 503 "Loading model" for this long.
//! - `FAKE_TOKENS` (16): tokens per request before an `eos` stop (`n_predict` below it: `limit`).
//! - `FAKE_TOKEN_DELAY_MS` (5): wait before each token.
//! - `FAKE_CRASH_AFTER_TOKENS` (unset): once any request has sent this many tokens, exit(3).
//! - `FAKE_FAIL_STATUS` (unset): every `/completion` answers this status with a llama-style error.
//! - `FAKE_HOLD_FILE` (unset): a path; while that file exists, no request sends a token after its
//!   first (tests hold tasks running by creating it and release them by removing it).
//! - `FAKE_TOKEN_STAMP` (0): 1 = token texts carry the time they were produced (`tok3@<µs> `), for
//!   `bench relay`'s added-latency figure.
//! - `FAKE_HOLD_UNTIL_SIGUSR1` (0): 1 = no request sends a token after its first until the process
//!   receives SIGUSR1 (`bench relay` opens thousands of streams, then releases them together).
//!
//! Endpoints: `GET /health`, `GET /props`, `GET /slots`, `POST /apply-template`,
//! `POST /completion` (streaming only), `GET /metrics` (with `--metrics`), and `GET /fake/stats`
//! (`max_concurrent`, `processing`, `total_requests`, `waiting`).

mod args;
mod completion;
mod knobs;
mod server;
mod slots;

use std::process::exit;

fn main() {
    let args = match args::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => fail(&e),
    };
    if args.version {
        eprintln!("version: 0.0.0-fake (build 0, commit fake-engine)");
        eprintln!("built with fake-engine for tests");
        exit(0);
    }
    let knobs = knobs::Knobs::from_env().unwrap_or_else(|e| fail(&e));
    let mut keys = args.api_keys.clone();
    if let Some(path) = &args.api_key_file {
        keys.extend(args::read_key_file(path).unwrap_or_else(|e| fail(&e)));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(&format!("tokio runtime: {e}")));
    if let Err(e) = rt.block_on(serve(args, keys, knobs)) {
        fail(&e);
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("fake-engine: error: {msg}");
    exit(1);
}

async fn serve(args: args::Args, keys: Vec<String>, knobs: knobs::Knobs) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
        .await
        .map_err(|e| format!("cannot bind {}:{}: {e}", args.host, args.port))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    eprintln!(
        "fake-engine: TEST-ONLY stand-in for llama-server; model={:?} alias={:?} slots={} n_ctx/slot={} metrics={} auth={} knobs={knobs:?} ignored={:?}",
        args.model,
        args.model_alias(),
        args.slots(),
        args.ctx_per_slot(),
        args.metrics,
        !keys.is_empty(),
        args.ignored
    );
    let (release, released) = tokio::sync::watch::channel(!knobs.hold_until_sigusr1);
    if knobs.hold_until_sigusr1 {
        tokio::spawn(release_on_sigusr1(release));
    }
    let state = server::AppState::new(&args, keys, knobs, released);
    let app = server::router(state);
    let host = if args.host.contains(':') {
        format!("[{}]", args.host)
    } else {
        args.host.clone()
    };
    eprintln!("main: server is listening on http://{host}:{port} - starting the main loop");
    tokio::spawn(exit_on_signal());
    axum::serve(listener, app)
        .await
        .map_err(|e| format!("server: {e}"))
}

/// `FAKE_HOLD_UNTIL_SIGUSR1`: the first SIGUSR1 releases every held request.
async fn release_on_sigusr1(release: tokio::sync::watch::Sender<bool>) {
    use tokio::signal::unix::{signal, SignalKind};
    if let Ok(mut usr1) = signal(SignalKind::user_defined1()) {
        usr1.recv().await;
        eprintln!("fake-engine: SIGUSR1, releasing every held request");
        let _ = release.send(true);
    }
}

/// SIGTERM / SIGINT: exit 0 at once (open streams just end), as an orderly engine stop.
async fn exit_on_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    eprintln!("fake-engine: received a stop signal, exiting");
    exit(0);
}
