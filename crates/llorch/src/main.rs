use clap::{Parser, Subcommand};

mod engine_cmd;
mod haiku_cmd;
mod models_cmd;
mod ops_cmd;
mod progress;
mod run_cmd;
mod up_cmd;

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
    /// Start orchestratord and one pool-managerd on this machine, stream a first haiku, keep serving.
    Up(up_cmd::UpArgs),
    /// Run one task and stream its tokens (Ctrl-C cancels it).
    Run(run_cmd::RunArgs),
    /// Run the e2e haiku check against a cluster and write its run folder.
    Haiku(haiku_cmd::HaikuArgs),
    /// Task records and cancel.
    Tasks {
        #[command(subcommand)]
        cmd: ops_cmd::TasksCmd,
        #[command(flatten)]
        conn: ops_cmd::Conn,
    },
    /// Registered worker nodes.
    Nodes {
        #[command(flatten)]
        conn: ops_cmd::Conn,
    },
    /// Tenants: roles, weights and usage against limits (admin token).
    Tenants {
        #[command(flatten)]
        conn: ops_cmd::Conn,
    },
    /// Pools and their state; drain and reload.
    Pools {
        #[command(subcommand)]
        cmd: Option<ops_cmd::PoolsCmd>,
        #[command(flatten)]
        conn: ops_cmd::Conn,
    },
    /// The model catalog: add, list, get, rm, verify, retire, activate; fetch into this machine's cache.
    Models {
        #[command(subcommand)]
        cmd: Option<models_cmd::ModelsCmd>,
        #[command(flatten)]
        conn: ops_cmd::Conn,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Engine(cmd) => engine_cmd::run(cmd).map(|_| 0),
        Cmd::Up(a) => runtime()
            .and_then(|rt| rt.block_on(up_cmd::run(a)))
            .map(|_| 0),
        Cmd::Run(a) => runtime().and_then(|rt| rt.block_on(run_cmd::run(a))),
        Cmd::Haiku(a) => runtime().and_then(|rt| rt.block_on(haiku_cmd::run(a))),
        Cmd::Tasks { cmd, conn } => runtime().and_then(|rt| rt.block_on(ops_cmd::tasks(cmd, conn))),
        Cmd::Nodes { conn } => runtime().and_then(|rt| rt.block_on(ops_cmd::nodes(conn))),
        Cmd::Tenants { conn } => runtime().and_then(|rt| rt.block_on(ops_cmd::tenants(conn))),
        Cmd::Pools { cmd, conn } => {
            runtime().and_then(|rt| rt.block_on(ops_cmd::pools_cmd(cmd, conn)))
        }
        Cmd::Models { cmd, conn } => {
            runtime().and_then(|rt| rt.block_on(models_cmd::run(cmd, conn)))
        }
    };
    match result {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("llorch: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Runtime::new()?)
}
