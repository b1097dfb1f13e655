use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
#[command(name = "orchestratord", version, about = "llama-orch control plane")]
struct Args {
    /// TOML config file.
    #[arg(long, env = "ORCHD_CONFIG")]
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
    let (mut raw, unknown): (orchestratord::config::RawConfig, Vec<String>) =
        match daemon::config::load(args.config.as_deref(), "ORCHD", &env) {
            Ok(r) => r,
            Err(problems) => return refuse(&problems),
        };
    let args_bind = args.bind.clone();
    if let Some(b) = args.bind {
        raw.server.bind = Some(b);
    }
    if let Some(l) = args.log_level {
        raw.logging.level = Some(l);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    let cfg = match daemon::main_loop::validated("orchestratord", unknown, raw.validate(&home)) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if args.check_config {
        println!("config ok: bind {}", cfg.bind);
        return std::process::ExitCode::SUCCESS;
    }
    daemon::logging::init(
        &cfg.log_level,
        if args.log_json {
            Some(true)
        } else {
            cfg.log_json
        },
    );
    let bind = cfg.bind;
    let path = args.config.clone();
    let bind_flag = args_bind;
    let reload: orchestratord::Reloader = Box::new(move || {
        let env: Vec<(String, String)> = std::env::vars().collect();
        let (mut raw, unknown): (orchestratord::config::RawConfig, Vec<String>) =
            daemon::config::load(path.as_deref(), "ORCHD", &env)?;
        if let Some(b) = &bind_flag {
            raw.server.bind = Some(b.clone());
        }
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/tmp"));
        match raw.validate(&home) {
            Ok(c) if unknown.is_empty() => Ok(c),
            Ok(_) => Err(unknown),
            Err(p) => Err([unknown, p].concat()),
        }
    });
    let threads = cfg.worker_threads;
    daemon::main_loop::serve(
        "orchestratord",
        bind,
        threads,
        |listener, shutdown| async move {
            orchestratord::run(cfg, listener, shutdown, Some(reload))
                .await
                .map_err(|e| format!("{e:#}").into())
        },
    )
}

fn refuse(problems: &[String]) -> std::process::ExitCode {
    daemon::main_loop::refuse("orchestratord", problems)
}
