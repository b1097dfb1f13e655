use std::path::PathBuf;

use clap::Parser;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "pool-managerd", version, about = "llama-orch worker daemon")]
struct Args {
    /// TOML config file.
    #[arg(long, env = "POOL_MANAGERD_CONFIG")]
    config: Option<PathBuf>,
    /// Overrides server.bind.
    #[arg(long)]
    bind: Option<String>,
    /// Overrides logging.level.
    #[arg(long)]
    log_level: Option<String>,
    /// JSON log lines even on a terminal.
    #[arg(long)]
    log_json: bool,
    /// Validate the config and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let env: Vec<(String, String)> = std::env::vars().collect();
    let (mut raw, unknown): (pool_managerd::config::RawConfig, Vec<String>) = match daemon::config::load(args.config.as_deref(), "POOL_MANAGERD", &env) {
        Ok(r) => r,
        Err(problems) => return refuse(&problems),
    };
    if let Some(b) = args.bind {
        raw.server.bind = Some(b);
    }
    if let Some(l) = args.log_level {
        raw.logging.level = Some(l);
    }
    let config = match (raw.validate(&pool_managerd::config::Host::detect()), unknown.is_empty()) {
        (Ok(c), true) => c,
        (Ok(_), false) => return refuse(&unknown),
        (Err(problems), _) => return refuse(&[unknown, problems].concat()),
    };
    if args.check_config {
        println!("config ok: node {} with {} pool(s)", config.node_id, config.pools.len());
        return std::process::ExitCode::SUCCESS;
    }
    daemon::logging::init(&config.log_level, if args.log_json { Some(true) } else { config.log_json });
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pool-managerd: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.bind).await.map_err(|e| anyhow::anyhow!("cannot bind {}: {e}", config.bind))?;
        let shutdown = CancellationToken::new();
        let s = shutdown.clone();
        tokio::spawn(async move {
            daemon::shutdown_signal().await;
            s.cancel();
        });
        pool_managerd::run(config, listener, shutdown).await
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pool-managerd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn refuse(problems: &[String]) -> std::process::ExitCode {
    eprintln!("pool-managerd: refusing to start, the configuration has {} problem(s):", problems.len());
    for p in problems {
        eprintln!("  - {p}");
    }
    std::process::ExitCode::from(2)
}
