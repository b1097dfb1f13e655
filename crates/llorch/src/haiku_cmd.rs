//! `llorch haiku`: the e2e haiku check against any cluster; writes its run folder and exits 0 only
//! when every check passed.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use llorch::haiku::{self, HaikuOptions};

#[derive(Args)]
pub struct HaikuArgs {
    /// Model id of a Ready pool with an instruct model and a chat template.
    #[arg(long, default_value = llorch::dev::MODEL_ID)]
    model: String,
    /// Output directory (the run folder is <out>/e2e-haiku/<run_id>/).
    #[arg(long, default_value = "out")]
    out: PathBuf,
    /// JSON log files of orchestratord and pool-managerd, for the logs check.
    #[arg(long = "log-file")]
    log_files: Vec<PathBuf>,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[arg(long, env = "LLORCH_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    #[arg(long, env = "LLORCH_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

pub async fn run(a: HaikuArgs) -> anyhow::Result<u8> {
    let opts = HaikuOptions {
        base_url: a.url,
        token: a.token,
        model: a.model,
        out_dir: a.out,
        log_files: a.log_files,
        seed: a.seed,
    };
    let mut print = |t: &str| {
        print!("{t}");
        let _ = std::io::stdout().flush();
    };
    let report = haiku::run(&opts, &mut print).await?;
    println!();
    if let Some(checks) = report.verification["checks"].as_object() {
        for (name, c) in checks {
            eprintln!(
                "  {:<12} {}  {}",
                name,
                if c["pass"] == true { "pass" } else { "FAIL" },
                c["detail"].as_str().unwrap_or("")
            );
        }
    }
    eprintln!(
        "haiku check {} — {}",
        if report.passed { "passed" } else { "FAILED" },
        report.run_dir.display()
    );
    Ok(if report.passed { 0 } else { 1 })
}
