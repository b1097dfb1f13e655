//! `cargo xtask bench overhead`: the same prompts streamed through the whole stack and directly to
//! a llama-server with the same binary, model and flags, alternating, several rounds; prints median
//! and p90 time-to-first-token and tokens/s for both, and the ratios.

mod overhead;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Benchmarks; each prints ratios against a baseline measured in the same run.
    #[command(subcommand)]
    Bench(Bench),
}

#[derive(Subcommand)]
enum Bench {
    /// Stack vs llama-server called directly.
    Overhead(overhead::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new()?;
    match cli.cmd {
        Cmd::Bench(Bench::Overhead(a)) => rt.block_on(overhead::run(a)),
    }
}
