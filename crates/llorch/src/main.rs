use std::path::PathBuf;

use clap::{Parser, Subcommand};

mod engine_cmd;

#[derive(Parser)]
#[command(name = "llorch", version, about = "llama-orch CLI")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Engine provisioning (build or locate llama-server).
    #[command(subcommand)]
    Engine(engine_cmd::EngineCmd),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Engine(cmd) => engine_cmd::run(cmd),
    }
}

/// `~/.cache/llama-orch`, or `$LLORCH_CACHE_DIR`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("LLORCH_CACHE_DIR") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("llama-orch")
}
