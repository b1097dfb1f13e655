//! `cargo xtask bench overhead`: the same prompts streamed through the whole stack and directly to
//! a llama-server with the same binary, model and flags, alternating, several rounds; prints median
//! and p90 time-to-first-token and tokens/s for both, and the ratios.

mod chaos;
mod failover;
mod fairness;
mod fetch;
mod floor;
mod layout;
mod openapi;
mod overhead;
mod overload;
mod prefix;
mod procstat;
mod relay;
mod scale;

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
    /// Writes contracts/openapi/orchestratord.json from the wire types (`--check`: exit 1 on drift).
    Openapi(openapi::Args),
    /// The minimal relay `bench relay` and `bench overhead` measure their floor with (started by
    /// the benches).
    #[command(hide = true)]
    RelayFloor(floor::Args),
}

#[derive(Subcommand)]
enum Bench {
    /// Stack vs llama-server called directly.
    Overhead(overhead::Args),
    /// Offered load at 0.5×–3× capacity against fake-engine pools.
    Overload(overload::Args),
    /// 100, 1,000 and 10,000 streams of tokens as fast as they come: CPU per relayed token.
    Relay(relay::Args),
    /// 1,000 simulated nodes and 10,000 concurrent streams through one orchestratord.
    Scale(scale::Args),
    /// The models cache's download versus a plain download of the same file.
    Fetch(fetch::Args),
    /// Two tenants at 3× capacity (90% / 10%): goodput share and queue wait, fair queuing vs FIFO.
    Fairness(fairness::Args),
    /// Real engines and workers killed, restarted and stopped under load: how tasks end.
    Chaos(chaos::Args),
    /// Cache-aware versus least-loaded placement on three real pools: multi-turn and control.
    Prefix(prefix::Args),
    /// HA: the leader killed mid-stream and with a queue, looped: failover time, streams, losses.
    Failover(failover::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Openapi(a) => openapi::run(a),
        Cmd::RelayFloor(a) => floor::run(a),
        Cmd::Bench(b) => {
            let rt = tokio::runtime::Runtime::new()?;
            match b {
                Bench::Overhead(a) => rt.block_on(overhead::run(a)),
                Bench::Overload(a) => rt.block_on(overload::run(a)),
                Bench::Relay(a) => rt.block_on(relay::run(a)),
                Bench::Scale(a) => rt.block_on(scale::run(a)),
                Bench::Fetch(a) => rt.block_on(fetch::run(a)),
                Bench::Fairness(a) => rt.block_on(fairness::run(a)),
                Bench::Chaos(a) => rt.block_on(chaos::run(a)),
                Bench::Prefix(a) => rt.block_on(prefix::run(a)),
                Bench::Failover(a) => rt.block_on(failover::run(a)),
            }
        }
    }
}

/// The stack spec of a bench on real `llama-server` pools: the given binaries (or freshly built
/// release ones), the dev model, the engine built from the pinned source, and a clean
/// `target/<name>` folder.
pub fn real_engine_spec(
    bin_dir: Option<&std::path::Path>,
    name: &str,
) -> anyhow::Result<llorch::stack::StackSpec> {
    let root = std::env::current_dir()?;
    let bin_dir = match bin_dir {
        Some(d) => d.to_path_buf(),
        None => {
            build_release(&["orchestratord", "pool-managerd"])?;
            root.join("target/release")
        }
    };
    let model = llorch::dev::model();
    let source = llorch::dev::llama_source();
    if !model.is_file() || !source.is_file() {
        anyhow::bail!("dev assets missing: run scripts/dev-assets.sh");
    }
    let dir = root.join("target").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(llorch::stack::StackSpec::new(
        bin_dir,
        dir,
        model,
        llorch::stack::EngineChoice::Source {
            archive: source,
            sha256: llorch::dev::LLAMA_SOURCE_SHA256.into(),
        },
        llorch::cache_dir().join("engines"),
    ))
}

/// `cargo build --release` of the given packages' binaries.
pub fn build_release(packages: &[&str]) -> anyhow::Result<()> {
    eprintln!("[bench] building release binaries");
    let mut cmd = std::process::Command::new("cargo");
    cmd.args(["build", "--release", "--quiet", "--bins"]);
    for p in packages {
        cmd.args(["-p", p]);
    }
    if !cmd.status()?.success() {
        anyhow::bail!("cargo build --release failed");
    }
    Ok(())
}
