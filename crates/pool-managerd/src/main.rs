use std::path::PathBuf;

use clap::Parser;

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
    let (mut raw, unknown): (pool_managerd::config::RawConfig, Vec<String>) =
        match daemon::config::load(args.config.as_deref(), "POOL_MANAGERD", &env) {
            Ok(r) => r,
            Err(problems) => return refuse(&problems),
        };
    if let Some(b) = args.bind {
        raw.server.bind = Some(b);
    }
    if let Some(l) = args.log_level {
        raw.logging.level = Some(l);
    }
    let config = match daemon::main_loop::validated(
        "pool-managerd",
        unknown,
        raw.validate(&pool_managerd::config::Host::detect()),
    ) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if args.check_config {
        println!(
            "config ok: node {} with {} pool(s)",
            config.node_id,
            config.pools.len()
        );
        return std::process::ExitCode::SUCCESS;
    }
    daemon::logging::init(
        &config.log_level,
        if args.log_json {
            Some(true)
        } else {
            config.log_json
        },
    );
    let (bind, threads) = (config.bind, config.worker_threads);
    daemon::main_loop::serve(
        "pool-managerd",
        bind,
        threads,
        |listener, shutdown| async move {
            pool_managerd::run(config, listener, shutdown)
                .await
                .map_err(|e| format!("{e:#}").into())
        },
    )
}

fn refuse(problems: &[String]) -> std::process::ExitCode {
    daemon::main_loop::refuse("pool-managerd", problems)
}
