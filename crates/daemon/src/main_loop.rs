//! What both daemons' `main` does once the config is valid: a runtime, the listener, the
//! SIGINT/SIGTERM shutdown token, and exit codes (2 for a refused config, 1 for a failure).

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

/// Prints every configuration problem and returns exit status 2.
pub fn refuse(daemon: &str, problems: &[String]) -> ExitCode {
    eprintln!(
        "{daemon}: refusing to start, the configuration has {} problem(s):",
        problems.len()
    );
    for p in problems {
        eprintln!("  - {p}");
    }
    ExitCode::from(2)
}

/// Merges unknown-key problems with validation problems: any problem refuses the start.
pub fn validated<T>(
    daemon: &str,
    unknown: Vec<String>,
    result: Result<T, Vec<String>>,
) -> Result<T, ExitCode> {
    match (result, unknown.is_empty()) {
        (Ok(c), true) => Ok(c),
        (Ok(_), false) => Err(refuse(daemon, &unknown)),
        (Err(problems), _) => Err(refuse(daemon, &[unknown, problems].concat())),
    }
}

/// The most runtime worker threads `server.worker_threads` accepts.
pub const MAX_WORKER_THREADS: u64 = 1024;

/// Checks `server.worker_threads`; unset (`None`) is one per core, tokio's default. One thread
/// halves the CPU per token of a lone stream (no wakeups between threads) but carries ten times
/// fewer tokens at 10,000 streams (decision 74).
pub fn worker_threads(raw: Option<u64>, problems: &mut Vec<String>) -> Option<usize> {
    match raw {
        None => None,
        Some(n) if (1..=MAX_WORKER_THREADS).contains(&n) => Some(n as usize),
        Some(n) => {
            problems.push(format!(
                "server.worker_threads: {n} is not between 1 and {MAX_WORKER_THREADS}"
            ));
            None
        }
    }
}

/// Binds `bind`, then runs `serve(listener, shutdown)` until it returns; SIGINT or SIGTERM
/// cancel `shutdown`. The runtime has `worker_threads` worker threads (`None`: one per core).
pub fn serve<F, Fut>(
    daemon: &str,
    bind: SocketAddr,
    worker_threads: Option<usize>,
    serve: F,
) -> ExitCode
where
    F: FnOnce(tokio::net::TcpListener, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>>,
{
    raise_nofile();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = worker_threads {
        builder.worker_threads(n);
    }
    let rt = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{daemon}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .map_err(|e| format!("cannot bind {bind}: {e}"))?;
        let shutdown = CancellationToken::new();
        let s = shutdown.clone();
        tokio::spawn(async move {
            crate::shutdown_signal().await;
            s.cancel();
        });
        serve(listener, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{daemon}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the open-files soft limit to the hard limit: every stream holds a socket (two in
/// pool-managerd), and distributions' default soft limit of 1,024 would cap a daemon near a
/// thousand streams.
fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}
